"""The deploy-time preflight: checks the AZ, quota and reservations before any node launches."""
