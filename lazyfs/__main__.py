import sys

from lazyfs.entry import main

sys.exit(main())
