"""The bundled training container's Dockerfile (its build context is the runtime package)."""
