"""A small support corpus with deliberate near-misses, shared by the adapter tests.

Plain strings and ids only, so every framework's test wraps them in its own objects.
"""

from __future__ import annotations

PASSAGES: dict[str, str] = {
    "refund-physical": "Refunds for physical goods are issued within fourteen days of the return.",
    "refund-digital": "Refunds for digital downloads are only possible before the file is opened.",
    "refund-gift": "Gift cards are not refundable and cannot be exchanged for cash.",
    "password-reset": "To reset a forgotten password open settings, choose security and follow "
    "the link we email you.",
    "password-change": "To change your password while signed in, open your profile and type the "
    "old password first.",
    "shipping-eu": "Shipping to Europe takes five to seven business days.",
    "shipping-us": "Shipping inside the United States takes two to four business days.",
    "warranty": "The warranty covers manufacturing defects for two years from delivery.",
    "subscription-pause": "You can pause a subscription for up to three months without losing "
    "your plan.",
    "subscription-cancel": "Cancelling a subscription stops the next renewal; paid months are "
    "not refunded.",
    "capital-germany": "Berlin is the capital of Germany.",
    "capital-france": "Paris is the capital of France and sits on the Seine.",
}

QUERY = "how do I get a refund for digital downloads"
