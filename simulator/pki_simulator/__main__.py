from pki_simulator.cli import main

raise SystemExit(main())
