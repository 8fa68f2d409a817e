"""Everything that talks to Microsoft Graph and Entra ID."""
