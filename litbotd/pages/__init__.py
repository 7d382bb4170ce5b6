"""The pages the daemon serves besides the webhook: a page per run (runpage.py), its access
check (access.py), and the operator dashboard. Routes are added by `app.add_routes`."""
