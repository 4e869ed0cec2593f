"""The enclave vault outside the enclave: the parent server on the host (``server``), its boot
script, and the node-side client (``client``); ``protocol`` holds what both sides agree on."""
