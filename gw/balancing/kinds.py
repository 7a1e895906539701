"""The names of balancers and of what a consistent hash reads, as BackendTrafficPolicy writes them (Envoy Gateway's)."""

from __future__ import annotations

# loadBalancer.type
ROUND_ROBIN, RANDOM, LEAST_REQUEST, CONSISTENT_HASH = "RoundRobin", "Random", "LeastRequest", "ConsistentHash"
# loadBalancer.consistentHash.type
SOURCE_IP, HEADER, COOKIE, QUERY_PARAMS = "SourceIP", "Header", "Cookie", "QueryParams"
TABLE_SIZE = 65537  # Envoy's default Maglev table size
MAX_TABLE_SIZE = 5000011
