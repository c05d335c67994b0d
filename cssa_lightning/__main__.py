from cssa_lightning.commands.entry import main

main()
