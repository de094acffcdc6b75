from fusescope.cli import main

raise SystemExit(main())
