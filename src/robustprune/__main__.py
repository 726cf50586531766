from robustprune.cli.main import main

main()
