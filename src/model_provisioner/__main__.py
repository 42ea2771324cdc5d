from model_provisioner.cli import main

raise SystemExit(main())
