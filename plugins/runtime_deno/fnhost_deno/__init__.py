"""fnhost-deno: the "deno" runtime, running functions in warm Deno worker processes."""
