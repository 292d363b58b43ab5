from synthmri.cli import main

raise SystemExit(main())
