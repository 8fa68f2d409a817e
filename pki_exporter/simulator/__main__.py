from pki_exporter.simulator.cli import main

raise SystemExit(main())
