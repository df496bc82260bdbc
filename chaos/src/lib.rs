//! shoal-chaos: the harness that runs real `shoal` processes and Envoys as hosts in network
//! namespaces and injects faults (issue 6). Empty until then.
