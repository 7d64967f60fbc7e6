from inference.server import main

raise SystemExit(main())
