from portward.cli import main

main()
