"""Users: a custom user model that signs in with an email address."""
