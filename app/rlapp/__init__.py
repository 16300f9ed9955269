"""Helpers of the routelens dashboard: run discovery, cached loaders, plotly figures, page furniture.

The dashboard is a thin shell: everything it shows is computed by ``routelens`` library functions;
this package only finds runs, caches what those functions return (``st.cache_data``) and draws it.
"""
