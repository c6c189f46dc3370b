from monosemantic.cli import main

main()
