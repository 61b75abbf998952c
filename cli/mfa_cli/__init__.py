"""mfa: the pam-mfa command line. It never opens the store; it asks mfad on the control socket."""

__version__ = "0.1.0"
