"""Sub-commands of the `hf-fastrm` console command; each module defines `register(subparsers)`."""
