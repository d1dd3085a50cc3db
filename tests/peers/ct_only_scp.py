"""A storage SCP (pynetdicom) that accepts CT Image Storage only: any other SOP class is rejected
at association negotiation (abstract syntax not supported). usage: ct_only_scp.py PORT AE_TITLE"""
import sys

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

ae = AE(ae_title=sys.argv[2])
ae.add_supported_context(CTImageStorage)
ae.require_called_aet = False


def on_store(event):
    return 0x0000


print("listening", flush=True)
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])
