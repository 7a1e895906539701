"""gw's policies: per-request decisions attached to rules by gw's own policy kinds (GEP-713).

Dependencies point proxy → policies → state: the proxy asks a rule's policies for a decision;
policies keep their shared state in Redis through gw.state.
"""
