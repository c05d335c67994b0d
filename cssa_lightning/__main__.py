from cssa_lightning.cli import main

main()
