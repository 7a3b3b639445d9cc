import SimpleITK as sitk, numpy as np, sys, glob, os
def ext(path, labels):
    img=sitk.DICOMOrient(sitk.ReadImage(path),'LPS'); a=sitk.GetArrayFromImage(img); sp=np.array(img.GetSpacing())[::-1]
    out={}
    for L in labels:
        m=a==L
        if not m.any(): continue
        if any(np.take(m,0,axis=x).any() or np.take(m,-1,axis=x).any() for x in range(3)): continue
        idx=np.argwhere(m)*sp; c=idx.mean(0)
        d=idx-c  # z(S+? LPS: z increases superior), y posterior, x left
        out[L]=(round(d[:,1].max(),1), round(-d[:,1].min(),1), round(d[:,2].max()-d[:,2].min(),1), round(m.sum()*np.prod(sp)/1000,1))
    return out
for p in sys.argv[1:]:
    print(os.path.basename(p)[:28], ext(p,[20,21,22,23,24]))
