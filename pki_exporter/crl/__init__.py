"""Revocation checks: read the CRLs a CA's certificates name, check them, compare them.

``model`` holds what a read comes to (compact: no CRL objects), ``parse`` checks a CRL
against its CA certificate, ``fetch`` downloads CRLs and CA certificates under the
allow-list and the caps, ``read`` puts the two together, ``coverage`` finds revocations
missing from their CRL. Nothing here touches the Store: the CRL reader does.
"""
