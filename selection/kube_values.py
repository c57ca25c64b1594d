"""The Kubernetes API server's grammars for the values a spec passes into pods.

A Job whose pod template breaks one of these is refused with 422 at creation, long after
`kubectl apply` accepted the DataSelection. The spec model checks them up front with the same
rules (k8s.io/apimachinery: resource.Quantity, validation.IsQualifiedName, IsValidLabelValue,
IsDNS1123Subdomain), and the CRD carries the patterns so the API server refuses them at apply.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# resource.Quantity: <number><suffix>, no spaces, no sign (requests and limits are never negative).
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
LABEL_VALUE_MAX = 63
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
DNS_SUBDOMAIN_MAX = 253
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# prefix/name (label and annotation keys, taint keys); the prefix is a DNS subdomain.
QUALIFIED_NAME_MAX = DNS_SUBDOMAIN_MAX + 1 + LABEL_VALUE_MAX
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + _NAME_PART + "$"
)

_SUFFIXES: dict[str, Decimal | int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def check_quantity(value: str) -> str:
    """`value` if it is a Kubernetes quantity ("4", "500m", "32Gi", "1e9"); ValueError otherwise."""
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity: a number with an optional suffix and no spaces, "
            "e.g. '4', '500m', '32Gi', '512Mi' (not '4 cores' or '32GB')"
        )
    return value


def quantity_value(value: str) -> Decimal:
    """The number a quantity stands for ('1Gi' -> 1073741824, '500m' -> 0.5)."""
    check_quantity(value)
    match = re.fullmatch(r"([0-9.]+)(.*)", value)
    assert match is not None
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError):
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from None


def check_label_value(value: str) -> str:
    """A label value: at most 63 characters, alphanumerics with '-', '_', '.' inside, or empty."""
    if len(value) > LABEL_VALUE_MAX or not re.fullmatch(LABEL_VALUE_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes label value: at most {LABEL_VALUE_MAX} characters, "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return value


def check_qualified_name(value: str) -> str:
    """A label/taint key: an optional DNS-subdomain prefix and '/', then a name of <= 63 characters."""
    prefix, _, name = value.rpartition("/")
    if (
        not re.fullmatch(QUALIFIED_NAME_PATTERN, value)
        or len(name) > LABEL_VALUE_MAX
        or len(prefix) > DNS_SUBDOMAIN_MAX
    ):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes label key: an optional DNS subdomain prefix and '/', "
            f"then at most {LABEL_VALUE_MAX} letters, digits, '-', '_' or '.' (no spaces), starting and "
            "ending with a letter or digit"
        )
    return value


def check_dns_subdomain(value: str) -> str:
    """An object name such as a PriorityClass or RuntimeClass: lowercase DNS subdomain."""
    if len(value) > DNS_SUBDOMAIN_MAX or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes object name: lowercase letters, digits, '-' and '.', "
            f"at most {DNS_SUBDOMAIN_MAX} characters"
        )
    return value
