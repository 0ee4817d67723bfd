import sys

from selavpr_ros.cli import main

sys.exit(main())
