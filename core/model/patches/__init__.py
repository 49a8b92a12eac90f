"""The changes prepare_model can make to a stock model, one file each; prepare.PATCHES lists them in order."""
