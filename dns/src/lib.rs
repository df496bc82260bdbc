//! shoal-dns: the DNS answers for service names (Cloud Map `<service>.<namespace>` and virtual
//! service names) over the view, and forwarding to recursors (issue 4). Empty until then.
