"""``python -m syncfab``: the ``syncfab`` command, for where its script is not on PATH."""

from syncfab.fabric.server.cli import main

raise SystemExit(main())
