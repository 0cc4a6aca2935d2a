from ilm.cli import main

main()
