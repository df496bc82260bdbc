//! shoal-gossip: the chitchat layer between every agent and server. It will own the key schema
//! for node metadata and registered instances, the typed endpoint view, and health status
//! (issue 4). Empty until then.
