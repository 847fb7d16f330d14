"""scripts/interop's parts: tap (checks and tables), procs (servers, waits, ports),
context (what the stages share, swaks helpers), relays_ab and relay_c (stages 1 and 2),
peers (private Postfix and Exim, Maildirs), clients and matrix (stage 3)."""
