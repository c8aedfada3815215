from fnhost.cli import main

main()
