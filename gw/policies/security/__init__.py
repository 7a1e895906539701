"""SecurityPolicy in the proxy: authentication phases (apiKeyAuth, basicAuth) and authorization."""
