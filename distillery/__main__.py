from distillery.entry import main

main()
