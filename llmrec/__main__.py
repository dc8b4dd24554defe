from llmrec.cli import main

raise SystemExit(main())
