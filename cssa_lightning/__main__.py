from cssa_lightning.commands import main

main()
