"""The enclave vault outside the enclave. On the vault host: the parent server (``server``, the
entry point) and its concerns (``caller_proof``, ``enclave_client``, ``key_state``, ``admission``,
``http_api``, ``imds``), the key-state write to S3 (``state_store``) and the boot script. On the
nodes: the client (``client``). ``protocol`` holds what both sides agree on."""
