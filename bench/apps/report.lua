-- wrk reporter for bench/run.py: one machine-readable line (latencies in microseconds).
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50=%d p90=%d p99=%d mean=%.1f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
