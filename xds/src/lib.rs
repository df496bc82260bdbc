//! shoal-xds: translation of the view into Envoy resources (a pure function) and the ADS
//! server that pushes them to local Envoys (issue 5). Empty until then.
