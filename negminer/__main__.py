from negminer.cli import main

main()
