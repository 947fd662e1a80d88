"""`fte web`: the REST API and the web console (aiohttp). ops.web.server is the HTTP side; ops.web.live the
one broker connection it keeps (statuses, progress, events, monitors, templates, verified like the CLI);
ops.web.auth the token. Commands go out through cli.client.FteClient, signed as the CLI signs them."""
