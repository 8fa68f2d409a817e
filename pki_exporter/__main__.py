from pki_exporter.cli import main

raise SystemExit(main())
