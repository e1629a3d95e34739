"""Auth0's Flask quickstart plus flask-keen-signup's two lines. See ``server.py``."""
