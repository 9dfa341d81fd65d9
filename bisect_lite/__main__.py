from bisect_lite.cli import main

main()
