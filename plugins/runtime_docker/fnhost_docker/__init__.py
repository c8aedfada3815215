"""fnhost-docker: the "docker" runtime, running functions in warm containers."""
