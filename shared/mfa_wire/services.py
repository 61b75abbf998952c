"""Which `services` entry of mfad.yaml applies to a PAM service: one rule, for mfad's
policy and for `mfa doctor`, which judges PAM stacks by the mode mfad will apply."""

from __future__ import annotations

from collections.abc import Mapping

SERVICE_VARIANTS = {"su-l": "su", "sudo-i": "sudo"}
"""PAM services that are the login-shell form of another: `su -` runs su-l and `sudo -i`
runs sudo-i. A `services` entry for the base name covers the variant too, unless the
variant has an entry of its own: a rule for `su` that `su -` escaped would be a hole."""


def mode_for(services: Mapping[str, str], service: str, default: str) -> str:
    """The mode for logins through PAM service `service`: its `services` entry, else that
    of the service it is a variant of, else `default` (the config's `mode`)."""
    if service in services:
        return services[service]
    return services.get(SERVICE_VARIANTS.get(service, ""), default)
