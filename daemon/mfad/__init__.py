"""mfad: the pam-mfa daemon. It decides policy, verifies codes and keeps the audit trail."""

__version__ = "0.1.0"
