from pierce.cli import main

raise SystemExit(main())
